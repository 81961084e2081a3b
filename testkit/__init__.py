"""Harness shared by the tests and the benchmarks; never imported by the runtime packages.

- ``testkit.broker``: a live local RabbitMQ (started when installed and stopped), throw-away
  virtual hosts, and ``rabbitmqctl`` views of queues and connections.
- ``testkit.broker_cluster``: a three-node RabbitMQ cluster beside it (own node names, ports and
  data), whose nodes a test kills and restarts.
- ``testkit.cluster``: real ``hefl coordinator`` / ``hefl hospital`` processes on that broker.
- ``testkit.drive``: a wire-level fake of Google Drive v3 and its OAuth endpoints, served on
  localhost for the real ``googleapiclient``.
- ``testkit.images``: the container images built as CI builds them, and what is inside them.
- ``testkit.imports``: the import contract, checked over every module's syntax tree.
"""
