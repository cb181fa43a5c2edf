{{/*
The operator's permissions on ScaledApps and their children (see charts/README.md, "RBAC"):
granted cluster-wide by a ClusterRole, or, with watchNamespaces, by a Role in each namespace.
*/}}
{{- define "scaledapp-operator.rules" -}}
# The primary resource: the controller lists and watches ScaledApps (in every namespace, or in
# each of watchNamespaces); get
# serves single reads of one ScaledApp. The operator never changes a ScaledApp's spec.
- apiGroups: ["scaled.dev"]
  resources: ["scaledapps"]
  verbs: ["get", "list", "watch"]
# Status (conditions, observedGeneration, per-component readiness, shard map) is written with
# server-side apply on the status subresource only.
- apiGroups: ["scaled.dev"]
  resources: ["scaledapps/status"]
  verbs: ["patch"]
# Children: the app and worker Deployments, the Postgres and Redis StatefulSets.
#   list, watch: the controller's watches and the per-ScaledApp listing before apply/prune;
#   create, patch: server-side apply (the API server authorizes an apply that creates a missing
#                  object as `create`, and one that changes an existing object as `patch`);
#   delete: pruning children a ScaledApp no longer renders.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Children: Services (app, Postgres primary/replicas, Redis) and ConfigMaps (runtime config,
# Postgres init scripts). Same verbs and reasons as above.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Children: the Postgres pods' ServiceAccount, and the Role and RoleBinding that let it `get`
# and `watch` its own ScaledApp (by name) and nothing else: the instance managers read which
# pod is primary from the ScaledApp's status. Same verbs and reasons as above. Granting that
# Role needs no `bind` or `escalate`: the operator holds those permissions itself (above).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Postgres pods (created by the shard StatefulSets, never by the operator): listed to find each
# instance's address for its /status, patched (server-side apply of one label) to move the
# primary/replica role label, which the -primary and -replica Services select on, and deleted
# one at a time during a rolling update (the shard StatefulSets use OnDelete, so the operator
# can replace replicas first and the primary after a switchover). App pods are listed by the
# metrics APIs (every replica) to scrape their metrics port. Volume claims
# are listed (metadata only) to know whether a shard already holds data before choosing its
# first primary.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list"]
# Child: the app's PodDisruptionBudget. Same verbs and reasons as above.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Children: HorizontalPodAutoscalers of the app and of each worker pool. Same verbs and
# reasons as above.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Children: NetworkPolicies isolating Postgres and Redis. Same verbs and reasons as above.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Generated credentials (Postgres and Redis passwords): read by name (get) to see whether a
# Secret exists, created once with random values (create), then only their labels and owner
# references are kept up to date (patch, server-side apply of metadata). Values are never
# overwritten, but for a rotation of the session secret (requested with `scaledapp-operator
# rotate-session-secret`), which reads <name>-app by name (get) and writes its two keys
# session-secret and session-secret-previous (patch, server-side apply). The metrics APIs get
# a ScaledApp's Redis password (<name>-redis, or the Secret its externalRedis names) by name to
# read queue backlogs. No list/watch: the operator never needs
# to read Secrets it was not told about. It cannot be narrower with a ClusterRole: resourceNames
# take exact names, not patterns, and these names come from ScaledApp names users choose. To keep
# the operator away from the Secrets of namespaces it does not serve, set watchNamespaces.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Events on ScaledApps (Created/Updated/Pruned/ApplyFailed/validation failures). The event
# recorder creates an Event and patches it to bump its series count when it repeats.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
