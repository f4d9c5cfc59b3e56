# The job's one identity, the vault of its secrets, and what the identity may do.

data "azurerm_client_config" "current" {}

resource "azurerm_user_assigned_identity" "job" {
  name                = "id-${var.prefix}-cohortsync"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = var.tags
}

# Secrets are set by an operator (docs/deployment.md), never by Terraform: their values never enter
# a file, a plan or the state. The job reads them through versionless references.
resource "azurerm_key_vault" "main" {
  name                          = "kv-${var.prefix}-cohortsync"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  rbac_authorization_enabled    = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = false
  network_acls {
    default_action = "Deny"
    bypass         = "None"
  }
  tags = var.tags
}

resource "azurerm_private_endpoint" "vault" {
  name                = "pe-${var.prefix}-vault"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "vault"
    private_connection_resource_id = azurerm_key_vault.main.id
    subresource_names              = ["vault"]
    is_manual_connection           = false
  }
  private_dns_zone_group {
    name                 = "vault"
    private_dns_zone_ids = [azurerm_private_dns_zone.zone["vault"].id]
  }
  tags = var.tags
}

locals {
  # Key Vault secret name -> the environment variable the job gets it as.
  databricks_secrets = {
    "oauth-m2m" = {
      "databricks-client-id"     = "DATABRICKS_CLIENT_ID"
      "databricks-client-secret" = "DATABRICKS_CLIENT_SECRET"
    }
    "pat" = {
      "databricks-token" = "DATABRICKS_TOKEN"
    }
  }
  job_secrets = merge(
    {
      "deid-key"       = "COHORTSYNC_DEID_KEY"
      "state-password" = "COHORTSYNC_STATE_PASSWORD"
    },
    local.databricks_secrets[var.databricks_auth],
  )
}

# Read the secrets: the job identity, on this vault only.
resource "azurerm_role_assignment" "job_secrets" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.job.principal_id
  principal_type       = "ServicePrincipal"
}

# Write and read the landing: the job identity, on the landing container only.
resource "azurerm_role_assignment" "job_landing" {
  scope                = azurerm_storage_container.landing.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.job.principal_id
  principal_type       = "ServicePrincipal"
}

# Write extracts: the job identity (manual `export` executions), on the exports container only.
resource "azurerm_role_assignment" "job_exports" {
  scope                = azurerm_storage_container.exports.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.job.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "job_pull" {
  scope                = var.container_registry_id
  role_definition_name = "AcrPull"
  principal_id         = azurerm_user_assigned_identity.job.principal_id
  principal_type       = "ServicePrincipal"
}

# The people who set and rotate the secrets (optional).
resource "azurerm_role_assignment" "operators_secrets" {
  count                = var.operator_object_id == "" ? 0 : 1
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = var.operator_object_id
  principal_type       = "Group"
}
