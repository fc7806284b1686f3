"""The course's own machinery, on top of everything else.

    saved_outputs  JupyterLab contents manager: a saved widget shows its last figure once its
                   kernel is gone (course/jupyter_server_config.py loads it)
    gpu_check      ``python -m moe_lab.gpu_check``: the bench, the training and every lesson on
                   a GPU, with a report

Layering: the top; may import any part of the package.
"""
