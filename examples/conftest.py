import os

# Otherwise every ti.init starts a thread that tries to reach the network for a version check.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
