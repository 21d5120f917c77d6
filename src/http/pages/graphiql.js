// Starts GraphiQL against this server: queries and mutations over HTTP, subscriptions over
// graphql-ws on the same path. The Headers tab goes with both (for a WebSocket, as the
// connection_init payload), which is where a token is pasted.
'use strict';
(function () {
  const http = new URL('/graphql', window.location.href);
  const ws = new URL(http);
  ws.protocol = http.protocol === 'https:' ? 'wss:' : 'ws:';
  const fetcher = GraphiQL.createFetcher({
    url: http.href,
    subscriptionUrl: ws.href,
    fetch: (url, options) => fetch(url, { ...options, credentials: 'same-origin' }),
  });
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, { fetcher, defaultEditorToolsVisibility: true }),
  );
})();
