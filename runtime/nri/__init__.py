"""NRI (containerd's Node Resource Interface), the runtime side: plugins connect (or are launched), register,
are configured and synchronized, and take part in pod and container lifecycle events."""
