"""The ``deeplense-ssl`` command line (installed as the package ``deeplense_ssl_cli``).

A thin click layer: each command parses options, builds the config dataclass and calls one
library function. The library never imports this package.
"""
