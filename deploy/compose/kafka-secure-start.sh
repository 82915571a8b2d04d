#!/bin/sh
# Starts one Kafka node of compose.secure.yaml (apache/kafka image) from a
# properties file written here rather than from KAFKA_* variables: the image's
# own templating cannot express PEM key stores on SASL_SSL listeners. The same
# settings as scripts/lib/secure.sh (secure_kafka_properties), for separate
# controllers and brokers:
#   controllers  CONTROLLER listener, TLS with client certificates required
#   brokers      CLIENT listener, SASL_SSL (SCRAM-SHA-512), brokers among
#                themselves as `admin`; to the controllers with the node certificate
# Users (SCRAM) are created with the metadata when a controller's storage is
# formatted.
#   ROLE=controller|broker NODE_ID=<n> [ADVERTISED_HOST=<name>]
set -eu
: "${ROLE:?}" "${NODE_ID:?}"
secrets=/secrets
props=/tmp/server.properties
data=/tmp/kafka-data
voters="1@controller-1:9093,2@controller-2:9093,3@controller-3:9093"
{
  echo "node.id=$NODE_ID"
  echo "controller.quorum.voters=$voters"
  echo "controller.listener.names=CONTROLLER"
  echo "log.dirs=$data"
  echo "ssl.keystore.type=PEM"
  echo "ssl.keystore.location=$secrets/node.pem"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=$secrets/ca.pem"
  echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
  echo "allow.everyone.if.no.acl.found=false"
  echo "super.users=User:admin;User:CN=tally-stack-node"
  if [ "$ROLE" = controller ]; then
    echo "process.roles=controller"
    echo "listeners=CONTROLLER://:9093"
    echo "listener.security.protocol.map=CONTROLLER:SSL"
    echo "ssl.client.auth=required"
  else
    echo "process.roles=broker"
    echo "listeners=CLIENT://:9092"
    echo "advertised.listeners=CLIENT://${ADVERTISED_HOST:?}:9092"
    echo "inter.broker.listener.name=CLIENT"
    echo "listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL"
    echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
    echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
    echo "listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$(cat $secrets/admin.password)\";"
    echo "default.replication.factor=3"
    echo "min.insync.replicas=2"
    echo "offsets.topic.replication.factor=3"
    echo "transaction.state.log.replication.factor=3"
    echo "transaction.state.log.min.isr=2"
    echo "auto.create.topics.enable=false"
  fi
} >"$props"
if [ ! -f "$data/meta.properties" ]; then
  set --
  if [ "$ROLE" = controller ]; then # the controllers hold the metadata
    for user in admin tally-producer tally-counter tally-aggregator; do
      set -- "$@" --add-scram "SCRAM-SHA-512=[name=$user,password=$(cat "$secrets/$user.password")]"
    done
  fi
  /opt/kafka/bin/kafka-storage.sh format -t "${CLUSTER_ID:?}" -c "$props" "$@"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$props"
