"""xiaophi's Gradio page: chat, knowledge bases and uploads, over the HTTP API only.

Importing the package switches gradio's analytics and hub look-ups off before gradio loads,
so the page makes no outbound calls.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
