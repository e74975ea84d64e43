"""Python clients of the service: GatewayClient over HTTP, DirectClient straight to Triton, and
the batches the CLI submits as jobs. They import the server only for what it exports."""
