"""Cluster DNS: the ``kube-dns`` Service's answers, as CoreDNS's kubernetes plugin gives them.

``wire`` parses queries and builds answers, ``records`` holds the zone built
from Services and EndpointSlices (both pure), ``server`` serves it: the
cluster daemon's ``ClusterDns`` agent opens UDP and TCP port 53 inside the
network namespace of each ``coredns`` pod (``k8s-app=kube-dns`` in
kube-system), behind the ``kube-dns`` ClusterIP that pods' resolv.conf names,
so queries travel through kube-proxy's rules like any Service traffic.
``bootstrap_objects`` are the Deployment and Service the daemon creates.
"""
