"""One module per `genlip` subcommand: argument parsing and orchestration (the work lives in the library)."""
