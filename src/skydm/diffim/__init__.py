"""skydm.diffim."""
