"""skydm.alerts."""
