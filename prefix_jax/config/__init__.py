"""Experiment configs: shared defaults, the `--config` parsing convention, old runs' upgrade.

`defaults` holds what every task config starts from; `parse` reads a config file by path
(`path[:key=value,flag]`) and applies `--config.key=value` overrides; `upgrade` turns a
finished run's `config.json`, whatever version wrote it, into today's schema.
"""
