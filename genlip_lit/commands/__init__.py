"""One file per `genlip` project command: argument parsing (jsonargparse; `--config` and `--print_config` for
every one, shared conventions in `common.py`) and orchestration. The work itself lives in the library
(`genlip_lit.eval`, `genlip_lit.encoders.export`, ...); each module's `main(argv)` is registered in `cli.EXTRA_COMMANDS`."""
