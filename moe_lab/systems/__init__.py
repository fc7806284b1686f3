"""Systems and performance (lessons 00, 06, 07): what an MoE costs and where it runs.

    device      pick a device, seed everything, the environment summary
    decisions   what runs where: dtype, grouped-GEMM path, compile, TF32 per device class
    params      parameters and FLOPs: stored against run per token
    bench       ``python -m moe_lab.bench``: dispatch strategies against the dense limit
    syncs       count host syncs (the CPU waiting for the GPU)
    threads     run tiny tensor work on a fixed number of CPU threads
    parallel    expert parallelism over torch.distributed

Layering: imports the core and itself.
"""
