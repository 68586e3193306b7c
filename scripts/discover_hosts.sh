#!/bin/sh
# Host discovery for elastic Horovod (horovodrun --host-discovery-script scripts/discover_hosts.sh):
# prints the hosts that may take part now, one "host:slots" per line. Horovod runs it every few seconds, so
# editing the file adds or removes hosts while training runs. Replace with a query of your scheduler or cloud
# (e.g. the nodes of an autoscaling group) where hosts come and go by themselves.
exec cat "${BIGTRAIN_HOSTS_FILE:-conf/local/hosts.txt}"
