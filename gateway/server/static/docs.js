// Swagger UI over the gateway's own OpenAPI document (a file, not inline: the CSP allows
// scripts from this origin only).
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // no badge from an outside validator: nothing leaves the gateway
});
