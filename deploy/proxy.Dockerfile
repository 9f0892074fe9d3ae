# The swarm stack's proxy (deploy/stack.yml): Debian's HAProxy in front of the API replicas.
#
# It finds the replicas by DNS (`tasks.api`, the service's endpoint_mode dnsrr) and asks again every few seconds,
# so rescheduled tasks are found; it checks each one's /readyz and retries a failed request on another replica.
# Built FROM the same python:3.11-slim as the API image, so the two share their base layer in a registry.
FROM python:3.11-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

COPY deploy/haproxy.cfg /etc/haproxy/haproxy.cfg
RUN haproxy -c -f /etc/haproxy/haproxy.cfg

USER haproxy
EXPOSE 3000
STOPSIGNAL SIGUSR1
# The proxy's own liveness (answered by HAProxy itself, whatever the replicas do).
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/proxy-livez', timeout=4)"]
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
