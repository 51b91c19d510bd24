"""The run browser: the local counterpart of the KFP UI, served by the local emulator app."""
from pipeline.local.browser.routes import router

__all__ = ["router"]
