"""skydm.coadd."""
