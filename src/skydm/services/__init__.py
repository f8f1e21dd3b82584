"""skydm web services (FastAPI): ``create_app`` mounts TAP at ``/tap``."""
