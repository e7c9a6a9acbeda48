"""The node agent (``sluice agent``) and the firewall profiles it applies.

Pure parts (profiles, grammar, render, detect) are shared with the service, which checks
and queues jobs with them; the I/O parts (firewall, traffic, capture, runner) run on the
protected host.
"""
