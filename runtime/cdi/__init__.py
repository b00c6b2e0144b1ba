"""CDI (the Container Device Interface): device specs from /etc/cdi and /var/run/cdi, resolved by qualified
name (`vendor.com/class=name`) into edits of a container's OCI spec."""
