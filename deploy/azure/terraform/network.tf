# One resource group, one virtual network: the job, the private endpoints and PostgreSQL share it.
# Nothing here has a public endpoint; DNS for every private endpoint is a private zone linked to it.

resource "azurerm_resource_group" "main" {
  name     = "rg-${var.prefix}-cohortsync"
  location = var.location
  tags     = var.tags
}

resource "azurerm_virtual_network" "main" {
  name                = "vnet-${var.prefix}-cohortsync"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  address_space       = [var.vnet_address_space]
  tags                = var.tags
}

# Container Apps environment (workload profiles): a /23, delegated.
resource "azurerm_subnet" "jobs" {
  name                 = "snet-jobs"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [cidrsubnet(var.vnet_address_space, 7, 0)]
  delegation {
    name = "containerapps"
    service_delegation {
      name    = "Microsoft.App/environments"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

# Private endpoints: landing (dfs, blob), cohorts share (file), Key Vault, the collaborator's Databricks.
resource "azurerm_subnet" "endpoints" {
  name                              = "snet-endpoints"
  resource_group_name               = azurerm_resource_group.main.name
  virtual_network_name              = azurerm_virtual_network.main.name
  address_prefixes                  = [cidrsubnet(var.vnet_address_space, 8, 2)]
  private_endpoint_network_policies = "Enabled"
}

# PostgreSQL flexible server with VNet integration: a subnet delegated to it alone.
resource "azurerm_subnet" "postgres" {
  name                 = "snet-postgres"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [cidrsubnet(var.vnet_address_space, 8, 3)]
  delegation {
    name = "postgres"
    service_delegation {
      name    = "Microsoft.DBforPostgreSQL/flexibleServers"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

# Inbound: nothing from outside the virtual network (the job serves nothing; PostgreSQL and the
# private endpoints answer only inside it). Outbound stays open for Entra ID token requests.
resource "azurerm_network_security_group" "main" {
  name                = "nsg-${var.prefix}-cohortsync"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  security_rule {
    name                       = "deny-internet-inbound"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "Internet"
    destination_address_prefix = "*"
  }
  tags = var.tags
}

resource "azurerm_subnet_network_security_group_association" "main" {
  for_each = {
    jobs      = azurerm_subnet.jobs.id
    endpoints = azurerm_subnet.endpoints.id
    postgres  = azurerm_subnet.postgres.id
  }
  subnet_id                 = each.value
  network_security_group_id = azurerm_network_security_group.main.id
}

locals {
  private_zones = {
    dfs        = "privatelink.dfs.core.windows.net"
    blob       = "privatelink.blob.core.windows.net"
    file       = "privatelink.file.core.windows.net"
    vault      = "privatelink.vaultcore.azure.net"
    databricks = "privatelink.azuredatabricks.net"
    postgres   = "${var.prefix}-cohortsync.private.postgres.database.azure.com"
  }
}

resource "azurerm_private_dns_zone" "zone" {
  for_each            = local.private_zones
  name                = each.value
  resource_group_name = azurerm_resource_group.main.name
  tags                = var.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "zone" {
  for_each             = local.private_zones
  name                 = "link-${each.key}"
  private_dns_zone_id  = azurerm_private_dns_zone.zone[each.key].id
  virtual_network_id   = azurerm_virtual_network.main.id
  registration_enabled = false
  tags                 = var.tags
}

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${var.prefix}-cohortsync"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

# The collaborator's workspace, reached only through a private endpoint (front end: the SQL
# warehouse's HTTPS endpoint and the OAuth token endpoint). They approve the connection request.
resource "azurerm_private_endpoint" "databricks" {
  name                = "pe-${var.prefix}-databricks"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "databricks-ui-api"
    private_connection_resource_id = var.databricks_workspace_id
    subresource_names              = ["databricks_ui_api"]
    is_manual_connection           = true
    request_message                = "cohortsync weekly sync (${var.prefix})"
  }
  private_dns_zone_group {
    name                 = "databricks"
    private_dns_zone_ids = [azurerm_private_dns_zone.zone["databricks"].id]
  }
  tags = var.tags
}
