"""kube-proxy for netk8s: turns Services and EndpointSlices into a node's NAT rules.

The package mirrors kube-proxy's iptables mode. ``hashing`` names chains the way
kube-proxy does, ``model`` turns API objects into frozen values, ``iptables``
renders those values into one ``iptables-restore`` payload (pure, no kernel),
and ``proxier`` is the per-node agent that watches the API and applies the
payload inside the node's network namespace through ``netk8s.kernel.iptables``.
"""
