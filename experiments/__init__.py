"""This project's experiments, outside the library: the protocol's runs (protocol.py, configs/bbir-protocol.yaml) and
the report writers that turn their saved results into docs/RESULTS.md (scripts/protocol.py report)."""
