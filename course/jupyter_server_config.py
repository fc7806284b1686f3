# The course's JupyterLab settings. `bash run.sh course` puts this folder on JUPYTER_CONFIG_PATH,
# so they apply to the course's server only (a learner's own ~/.jupyter settings still win).
from pathlib import Path

from moe_lab.course.saved_outputs import CourseContentsManager

c = get_config()  # noqa: F821 (defined by the config loader)

# A saved widget output shows the widget's last figure, not "Error displaying widget: model not
# found", once the kernel that drew it is gone (moe_lab/course/saved_outputs.py).
c.ServerApp.contents_manager_class = CourseContentsManager

# Default settings of this JupyterLab (lab-settings/overrides.json): no "get notified about
# Jupyter news?" pop-up over the first figure, no update check. Also nothing fetched from the news
# feed: the course needs no network.
c.LabApp.app_settings_dir = str(Path(__file__).resolve().parent / "lab-settings")
c.LabApp.news_url = None
