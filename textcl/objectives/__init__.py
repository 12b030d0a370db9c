"""Text pretext objectives, one file each. Registered by name in ``textcl.core.method``."""
