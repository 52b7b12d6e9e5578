"""Console pages, one module per page; each view reads, or calls one action to write."""
