"""skydm.archive."""
