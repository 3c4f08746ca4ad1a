pytest_plugins = ["aop_client.testing"]
