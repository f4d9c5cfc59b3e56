# Example values (no secrets): copy, fill in, and pass with -var-file. The PostgreSQL admin password
# comes from the environment only: export TF_VAR_pg_admin_password=... (never in this file).
subscription_id            = "00000000-0000-0000-0000-000000000000"
location                   = "westeurope"
prefix                     = "acme"
image                      = "acmeacr.azurecr.io/cohortsync@sha256:0000000000000000000000000000000000000000000000000000000000000000"
container_registry_id      = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-acme-shared/providers/Microsoft.ContainerRegistry/registries/acmeacr"
container_registry_server  = "acmeacr.azurecr.io"
databricks_workspace_id    = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-collab/providers/Microsoft.Databricks/workspaces/collab-omop"
databricks_server_hostname = "adb-1234567890123456.7.azuredatabricks.net"
databricks_http_path       = "/sql/1.0/warehouses/0123456789abcdef"
schedule_cron              = "0 6 * * 0"
operator_object_id         = ""
