//go:build tools

// Pins the helm command as a dependency of this module.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
