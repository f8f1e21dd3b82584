"""skydm.sim."""
