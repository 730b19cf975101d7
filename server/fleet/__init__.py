"""A fleet of Sluice replicas sharing one deployment state in etcd (issue 15): the etcd store,
the watch that keeps every replica's router in step with it, and the lease that elects the one
replica driving canaries. The only package besides the transport that talks to the network."""
