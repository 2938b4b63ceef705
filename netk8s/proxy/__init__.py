"""kube-proxy for netk8s: turns Services and EndpointSlices into a node's packet rules.

``model`` turns API objects into frozen values (service ports, endpoints and their
categories); ``hashing`` names chains as kube-proxy does; ``iptables`` and
``nftables`` render those values the way kube-proxy's two modes do (pure, no
kernel); ``backend`` is the contract between the renderers and ``proxier``, the
per-node agent that watches the API and applies full and partial syncs inside the
node's namespace (``netk8s.kernel.iptables`` / ``netk8s.kernel.nft``). ``trace``
and ``nftables_trace`` follow a packet through rendered or live rules;
``health`` serves kube-proxy's health and mode endpoints and the health check
node ports; ``conntrack`` plans the clean-up of stale UDP flows.
"""
