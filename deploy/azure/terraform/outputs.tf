output "job_name" {
  value = azurerm_container_app_job.sync.name
}

output "resource_group" {
  value = azurerm_resource_group.main.name
}

output "key_vault_name" {
  value       = azurerm_key_vault.main.name
  description = "Set the secrets here (docs/deployment.md): deid-key, state-password, databricks-client-id/-secret or databricks-token."
}

output "landing_url" {
  value = local.landing_url
}

output "state_url" {
  value       = local.state_url
  description = "The state URL without a password (COHORTSYNC_STATE__URL)."
}

output "postgres_fqdn" {
  value = azurerm_postgresql_flexible_server.state.fqdn
}

output "job_identity_client_id" {
  value = azurerm_user_assigned_identity.job.client_id
}

output "databricks_private_endpoint_ip" {
  value       = azurerm_private_endpoint.databricks.private_service_connection[0].private_ip_address
  description = "Give it to the collaborator with the connection request to approve."
}
