# Names, regions and sizes. No secret is a variable except the PostgreSQL administrator password,
# which is ephemeral (never written to the state or a plan) and is passed as TF_VAR_pg_admin_password.

variable "subscription_id" {
  type        = string
  description = "Subscription that holds the job."
}

variable "location" {
  type        = string
  description = "Azure region of every resource, e.g. westeurope."
}

variable "prefix" {
  type        = string
  description = "Short lowercase name prefix (letters and digits, at most 11) for every resource."
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,10}$", var.prefix))
    error_message = "prefix: 2 to 11 lowercase letters or digits, starting with a letter."
  }
}

variable "tags" {
  type    = map(string)
  default = {}
}

variable "vnet_address_space" {
  type        = string
  default     = "10.40.0.0/16"
  description = "Address space of the job's virtual network; the subnets are carved from it."
}

variable "image" {
  type        = string
  description = "The job image built from deploy/azure/Dockerfile, by digest: REGISTRY/cohortsync@sha256:..."
}

variable "container_registry_id" {
  type        = string
  description = "Resource id of the Azure Container Registry that holds the image (the job identity gets AcrPull)."
}

variable "container_registry_server" {
  type        = string
  description = "Login server of that registry, e.g. myacr.azurecr.io."
}

variable "schedule_cron" {
  type        = string
  default     = "0 6 * * 0"
  description = "When the weekly sync starts (UTC, five fields): after the collaborator's Sunday load is finished."
  validation {
    # weekly: a fixed minute and hour, any day of month and month, exactly one day of the week
    condition     = can(regex("^[0-5]?[0-9] ([01]?[0-9]|2[0-3]) \\* \\* [0-6]$", var.schedule_cron))
    error_message = "schedule_cron: one run a week, 'M H * * D' (D = 0 for Sunday)."
  }
}

variable "schedule_enabled" {
  type        = bool
  default     = true
  description = "false: the job runs only when started by hand (first deployment, key rotation)."
}

variable "replica_timeout_seconds" {
  type        = number
  default     = 28800
  description = "Longest a run may take (the entry script's retries of transient failures included)."
}

variable "job_cpu" {
  type    = number
  default = 2
}

variable "job_memory" {
  type    = string
  default = "4Gi"
}

variable "transient_retries" {
  type        = number
  default     = 2
  description = "Runs again after exit 4 (transient) inside one execution (deploy/azure/entrypoint.sh)."
}

variable "transient_retry_delay_seconds" {
  type    = number
  default = 900
}

variable "databricks_workspace_id" {
  type        = string
  description = "Resource id of the collaborator's Azure Databricks workspace (the private endpoint's target; they approve the connection)."
}

variable "databricks_server_hostname" {
  type        = string
  description = "The workspace host name, e.g. adb-1234567890123456.7.azuredatabricks.net (source.server_hostname)."
}

variable "databricks_http_path" {
  type        = string
  description = "HTTP path of the SQL warehouse the collaborator granted (source.http_path)."
}

variable "databricks_catalog" {
  type    = string
  default = "hive_metastore"
}

variable "databricks_auth" {
  type        = string
  default     = "oauth-m2m"
  description = "source.auth: oauth-m2m (DATABRICKS_CLIENT_ID/_SECRET from Key Vault) or pat (DATABRICKS_TOKEN)."
  validation {
    condition     = contains(["oauth-m2m", "pat"], var.databricks_auth)
    error_message = "databricks_auth: oauth-m2m or pat."
  }
}

variable "landing_container" {
  type    = string
  default = "landing"
}

variable "landing_prefix" {
  type    = string
  default = "cohortsync"
}

variable "state_database" {
  type        = string
  default     = "cohortsync"
  description = "Database of state.url. Terraform creates \"cohortsync\"; another one (a key rotation's fresh state) is created by hand."
}

variable "storage_replication" {
  type    = string
  default = "ZRS"
}

variable "pg_sku" {
  type    = string
  default = "B_Standard_B1ms"
}

variable "pg_version" {
  type    = string
  default = "16"
}

variable "pg_admin_login" {
  type    = string
  default = "pgadmin"
}

variable "pg_admin_password" {
  type        = string
  sensitive   = true
  ephemeral   = true
  description = "PostgreSQL administrator password, from TF_VAR_pg_admin_password; written only through a write-only argument."
}

variable "pg_admin_password_version" {
  type        = number
  default     = 1
  description = "Increase to make Terraform set a new administrator password."
}

variable "operator_object_id" {
  type        = string
  default     = ""
  description = "Entra object id of the group that sets the Key Vault secrets (Key Vault Secrets Officer); empty: none."
}

variable "log_retention_days" {
  type    = number
  default = 90
}
