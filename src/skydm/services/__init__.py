"""skydm.services."""
