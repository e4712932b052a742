"""One module per `genlip` project command: argument parsing and orchestration of the libraries."""
