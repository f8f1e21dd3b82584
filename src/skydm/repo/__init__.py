"""skydm.repo."""
