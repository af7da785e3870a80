from django.apps import AppConfig


class OrganizationsConfig(AppConfig):
    name = "organizations"
    verbose_name = "Identity and tenancy"

    def ready(self):
        from organizations import schema  # noqa: F401  (registers the OpenAPI auth schemes)
