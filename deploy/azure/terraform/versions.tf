# The cohortsync weekly job in Azure (docs/deployment.md). Terraform rather than Bicep: see there.
terraform {
  required_version = ">= 1.11" # write-only arguments keep the PostgreSQL admin password out of the state
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 5.10"
    }
  }
  # Keep the state in a protected remote backend (it holds the cohorts share's access key), e.g.
  # backend "azurerm" {} with -backend-config at `terraform init`.
}

provider "azurerm" {
  features {}
  subscription_id     = var.subscription_id
  storage_use_azuread = true # no shared keys on the landing account
}
