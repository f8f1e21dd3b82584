"""skydm.catalog."""
