# The weekly job: a scheduled Container Apps job, one replica, no overlap, logs to Log Analytics.

resource "azurerm_container_app_environment" "main" {
  name                           = "cae-${var.prefix}-cohortsync"
  location                       = azurerm_resource_group.main.location
  resource_group_name            = azurerm_resource_group.main.name
  infrastructure_subnet_id       = azurerm_subnet.jobs.id
  internal_load_balancer_enabled = true
  public_network_access          = "Disabled"
  logs_destination               = "log-analytics"
  log_analytics_workspace_id     = azurerm_log_analytics_workspace.main.id
  workload_profile {
    name                  = "Consumption"
    workload_profile_type = "Consumption"
  }
  tags = var.tags
}

resource "azurerm_container_app_environment_storage" "cohorts" {
  name                         = "cohorts"
  container_app_environment_id = azurerm_container_app_environment.main.id
  account_name                 = azurerm_storage_account.cohorts.name
  share_name                   = azurerm_storage_share.cohorts.name
  access_key                   = azurerm_storage_account.cohorts.primary_access_key
  access_mode                  = "ReadWrite" # add-cohort / amend-cohort run as manual executions
}

locals {
  landing_url = "abfss://${var.landing_container}@${azurerm_storage_account.landing.name}.dfs.core.windows.net/${var.landing_prefix}"
  state_url   = "postgresql://cohortsync@${azurerm_postgresql_flexible_server.state.fqdn}:5432/${var.state_database}?sslmode=require"
  # Settings that are not secrets (docs/configuration.md); the image's cohortsync.toml holds the rest.
  job_env = {
    COHORTSYNC_SOURCE__SERVER_HOSTNAME = var.databricks_server_hostname
    COHORTSYNC_SOURCE__HTTP_PATH       = var.databricks_http_path
    COHORTSYNC_SOURCE__CATALOG         = var.databricks_catalog
    COHORTSYNC_SOURCE__AUTH            = var.databricks_auth
    COHORTSYNC_LANDING__PATH           = local.landing_url
    COHORTSYNC_STATE__URL              = local.state_url
    # The user-assigned identity's client id: selects it for managed-identity tokens (no secret).
    AZURE_CLIENT_ID       = azurerm_user_assigned_identity.job.client_id
    JOB_TRANSIENT_RETRIES = tostring(var.transient_retries)
    JOB_RETRY_DELAY_S     = tostring(var.transient_retry_delay_seconds)
  }
}

resource "azurerm_container_app_job" "sync" {
  name                         = "caj-${var.prefix}-cohortsync"
  location                     = azurerm_resource_group.main.location
  resource_group_name          = azurerm_resource_group.main.name
  container_app_environment_id = azurerm_container_app_environment.main.id
  workload_profile_name        = "Consumption"
  # A run that outlives this is stopped; its uncommitted table lands again next time (docs/sync.md).
  replica_timeout_in_seconds = var.replica_timeout_seconds
  # No platform retries: only transient failures (exit 4) are retried, by the entry script.
  replica_retry_limit = 0

  # Weekly, one replica, one completion. With the schedule off, the same job runs only by hand.
  dynamic "schedule_trigger_config" {
    for_each = var.schedule_enabled ? [1] : []
    content {
      cron_expression          = var.schedule_cron
      parallelism              = 1
      replica_completion_count = 1
    }
  }
  dynamic "manual_trigger_config" {
    for_each = var.schedule_enabled ? [] : [1]
    content {
      parallelism              = 1
      replica_completion_count = 1
    }
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.job.id]
  }

  registry {
    server   = var.container_registry_server
    identity = azurerm_user_assigned_identity.job.id
  }

  # Container Apps secrets that are Key Vault references, read with the job identity.
  dynamic "secret" {
    for_each = local.job_secrets
    content {
      name                = secret.key
      identity            = azurerm_user_assigned_identity.job.id
      key_vault_secret_id = "${azurerm_key_vault.main.vault_uri}secrets/${secret.key}"
    }
  }

  template {
    container {
      name   = "cohortsync"
      image  = var.image
      cpu    = var.job_cpu
      memory = var.job_memory
      args   = ["sync", "--json"]

      dynamic "env" {
        for_each = local.job_env
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.job_secrets
        content {
          name        = env.value
          secret_name = env.key
        }
      }

      volume_mounts {
        name = "cohorts"
        path = "/data/cohorts"
      }
    }

    volume {
      name         = "cohorts"
      storage_type = "AzureFile"
      storage_name = azurerm_container_app_environment_storage.cohorts.name
    }
  }

  tags = var.tags
  depends_on = [
    azurerm_role_assignment.job_secrets,
    azurerm_role_assignment.job_landing,
    azurerm_role_assignment.job_pull,
    azurerm_private_endpoint.vault,
  ]
}
