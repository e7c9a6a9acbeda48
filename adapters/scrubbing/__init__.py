"""Scrubbing integrations: one module per provider on top of :mod:`.common`.

Adapter types (the Flowtriq integration types): ``cloudflare_magic_transit``,
``cloudflare_waf``, ``ovh_mitigation``, ``hetzner_mitigation``, ``digitalocean``,
``vultr``, ``aws_shield``, ``linode``. Each module's docstring says exactly what
"diverting" means at that provider.
"""
