# Where the data rests: the landing (ADLS Gen2), the cohort files (Azure Files), the state (PostgreSQL).

# Landing and exports: hierarchical namespace, no public access, no shared keys (Entra ID only).
resource "azurerm_storage_account" "landing" {
  #checkov:skip=CKV_AZURE_206:ZRS by default (var.storage_replication); the landing can be rebuilt from the source (verify --repair)
  #checkov:skip=CKV_AZURE_36:no trusted-service bypass: only the private endpoints reach the account
  #checkov:skip=CKV_AZURE_33:no queues are used
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys; a customer-managed key is a policy choice left to the operator
  name                            = "st${var.prefix}landing"
  location                        = azurerm_resource_group.main.location
  resource_group_name             = azurerm_resource_group.main.name
  account_kind                    = "StorageV2"
  account_tier                    = "Standard"
  account_replication_type        = var.storage_replication
  is_hns_enabled                  = true
  https_traffic_only_enabled      = true
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  public_network_access_enabled   = false
  shared_access_key_enabled       = false
  default_to_oauth_authentication = true
  local_user_enabled              = false
  network_rules {
    default_action = "Deny"
    bypass         = ["None"]
  }
  blob_properties {
    delete_retention_policy {
      days = 14
    }
    container_delete_retention_policy {
      days = 14
    }
  }
  tags = var.tags
}

resource "azurerm_storage_container" "landing" {
  #checkov:skip=CKV2_AZURE_21:read logging is on for the account's blob service (azurerm_monitor_diagnostic_setting.landing_blob)
  name                  = var.landing_container
  storage_account_id    = azurerm_storage_account.landing.id
  container_access_type = "private"
}

# Per-buyer extracts (`cohortsync export ... --out abfss://exports@.../BUYER`), apart from the landing.
resource "azurerm_storage_container" "exports" {
  #checkov:skip=CKV2_AZURE_21:read logging is on for the account's blob service (azurerm_monitor_diagnostic_setting.landing_blob)
  name                  = "exports"
  storage_account_id    = azurerm_storage_account.landing.id
  container_access_type = "private"
}

# Who read or wrote the landing and the exports, to Log Analytics.
resource "azurerm_monitor_diagnostic_setting" "landing_blob" {
  name                       = "landing-blob-to-log-analytics"
  target_resource_id         = "${azurerm_storage_account.landing.id}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  enabled_log {
    category = "StorageRead"
  }
  enabled_log {
    category = "StorageWrite"
  }
  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_private_endpoint" "landing" {
  for_each            = toset(["dfs", "blob"])
  name                = "pe-${var.prefix}-landing-${each.key}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "landing-${each.key}"
    private_connection_resource_id = azurerm_storage_account.landing.id
    subresource_names              = [each.key]
    is_manual_connection           = false
  }
  private_dns_zone_group {
    name                 = each.key
    private_dns_zone_ids = [azurerm_private_dns_zone.zone[each.key].id]
  }
  tags = var.tags
}

# The reviewed cohort files (cohorts/NAME/cohort.toml, members.txt: the collaborator's person ids),
# mounted into the job at /data/cohorts. Container Apps mounts an SMB share with the account key, so
# this small account keeps shared keys and nothing else; the key sits in the Terraform state.
resource "azurerm_storage_account" "cohorts" {
  #checkov:skip=CKV_AZURE_206:ZRS by default; the cohort files are also in their reviewed repository
  #checkov:skip=CKV_AZURE_36:no trusted-service bypass: only the private endpoint reaches the account
  #checkov:skip=CKV_AZURE_33:no queues are used
  #checkov:skip=CKV2_AZURE_40:Container Apps mounts an SMB share with the account key
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys; a customer-managed key is a policy choice left to the operator
  name                            = "st${var.prefix}cohorts"
  location                        = azurerm_resource_group.main.location
  resource_group_name             = azurerm_resource_group.main.name
  account_kind                    = "StorageV2"
  account_tier                    = "Standard"
  account_replication_type        = var.storage_replication
  https_traffic_only_enabled      = true
  min_tls_version                 = "TLS1_2"
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = true # the SMB mount needs the key; SAS tokens expire within a day
  public_network_access_enabled   = false
  network_rules {
    default_action = "Deny"
    bypass         = ["None"]
  }
  sas_policy {
    expiration_period = "01.00:00:00"
    expiration_action = "Log"
  }
  blob_properties {
    delete_retention_policy {
      days = 14
    }
  }
  share_properties {
    retention_policy {
      days = 14
    }
  }
  tags = var.tags
}

resource "azurerm_storage_share" "cohorts" {
  name               = "cohorts"
  storage_account_id = azurerm_storage_account.cohorts.id
  quota              = 1
  enabled_protocol   = "SMB"
}

resource "azurerm_private_endpoint" "cohorts" {
  name                = "pe-${var.prefix}-cohorts-file"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "cohorts-file"
    private_connection_resource_id = azurerm_storage_account.cohorts.id
    subresource_names              = ["file"]
    is_manual_connection           = false
  }
  private_dns_zone_group {
    name                 = "file"
    private_dns_zone_ids = [azurerm_private_dns_zone.zone["file"].id]
  }
  tags = var.tags
}

# The state store: watermarks, committed files, runs, exports, the run lock (an advisory lock).
resource "azurerm_postgresql_flexible_server" "state" {
  #checkov:skip=CKV2_AZURE_57:VNet integration (delegated subnet, private DNS zone) instead of a private endpoint; no public access either way
  name                              = "psql-${var.prefix}-cohortsync"
  location                          = azurerm_resource_group.main.location
  resource_group_name               = azurerm_resource_group.main.name
  version                           = var.pg_version
  sku_name                          = var.pg_sku
  storage_mb                        = 32768
  backup_retention_days             = 35
  geo_redundant_backup_enabled      = true
  delegated_subnet_id               = azurerm_subnet.postgres.id
  private_dns_zone_id               = azurerm_private_dns_zone.zone["postgres"].id
  public_network_access_enabled     = false
  administrator_login               = var.pg_admin_login
  administrator_password_wo         = var.pg_admin_password
  administrator_password_wo_version = var.pg_admin_password_version
  authentication {
    password_auth_enabled         = true
    active_directory_auth_enabled = false
  }
  tags       = var.tags
  depends_on = [azurerm_private_dns_zone_virtual_network_link.zone]
  lifecycle {
    ignore_changes = [zone]
  }
}

resource "azurerm_postgresql_flexible_server_database" "state" {
  name      = "cohortsync"
  server_id = azurerm_postgresql_flexible_server.state.id
  charset   = "UTF8"
  collation = "en_US.utf8"
}
