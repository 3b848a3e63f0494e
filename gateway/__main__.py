from gateway.cli import serve

serve()
