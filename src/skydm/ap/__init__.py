"""skydm.ap."""
