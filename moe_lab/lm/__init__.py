"""A tiny MoE language model, its data and its training (lessons 03-05, 11).

    tokenizer      ByteTokenizer: UTF-8 bytes, no vocabulary file
    text_routing   route_bytes: which experts each byte of a text goes to, per layer
    toy, stats     lesson 04's toy task and the per-step routing statistics
    data           the multilingual corpus, split and batched with each sequence's language
    model          a tiny decoder-only transformer with dense or MoE blocks
    train          the training loop (``python -m moe_lab.train``)
    specialisation language x expert counts, mutual information (bits)
    seeds          compare_seeds: does a gap between runs exceed the seed spread?
    balance_scope  lesson 11: training with the balance per sequence, micro-batch, global batch
                   or the bias (``python -m moe_lab.lm.balance_scope``)

Layering: imports the core, ``variants`` (upcycling) and ``systems`` (device, threads, params);
no figure, widget or checker.
"""
