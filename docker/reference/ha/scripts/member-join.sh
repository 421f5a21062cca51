#!/usr/bin/env bash

echo "Member join script triggered" >> /var/log/serf.log

BACKEND_REGISTERED=false

# Each line: name, address, role, tags (tab separated)
while read -a values; do
  NODE_NAME=${values[0]}
  NODE_IP=${values[1]}
  NODE_ROLE=${values[2]}

  if [[ "$NODE_ROLE" != "backend" ]]; then
    continue
  fi

  echo "Member join event received from: $NODE_NAME with role $NODE_ROLE" >> /var/log/serf.log

  # Remember the backend node
  echo "$NODE_NAME $NODE_IP" > /nodes/$NODE_NAME

  BACKEND_REGISTERED=true
done

if [[ "$BACKEND_REGISTERED" = true ]]; then
  # Build the list of addresses from every known node
  JSON=""
  for f in /nodes/*; do
    [ -e "$f" ] || continue
    read HOST IP < "$f"
    JSON="$JSON{\"host\":\"$HOST\",\"ip\":\"$IP\"},"
  done
  JSON="[${JSON%,}]"

  handlebars --addresses "$JSON" < /config/haproxy.cfg.hb > /usr/local/etc/haproxy/haproxy.cfg

  # Ask s6 to reload HAProxy
  s6-svc -h /var/run/s6/services/ha
fi
