"""Stage 4, the kernel: singular values of each matrix (exact, or through its Gram matrix with a
checked error bound) and the SNR they give; several matrices at once on a many-core CPU."""
