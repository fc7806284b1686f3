"""How real trained MoEs route, and where their experts should go (lesson 09).

    real_routing    OLMoE-1B-7B / Mixtral-8x7B expert counts shipped with the package
    placement       experts on devices from their loads: packing, replication

Layering: imports the core and ``moe_lab.lm`` (its specialisation measures); no figure, widget
or checker.
"""
